"""Resource limits shared by every layer. Specs beyond them are typos or attacks, never networks."""
MAX_CHANNELS = 1 << 20      # 1,048,576 channels/features
MAX_KERNEL = 1 << 10
MAX_SPATIAL = 1 << 16       # 65,536 pixels per side
MAX_SCALE = 64
MAX_REPEAT = 10_000
MAX_NODES = 100_000         # nodes after expanding blocks and repeats (ResNet-152: 570)
