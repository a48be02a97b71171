"""Resource limits shared by every layer. Specs beyond them are typos or attacks, never networks."""
MAX_CHANNELS = 1 << 20      # 1,048,576 channels/features
MAX_KERNEL = 1 << 10
MAX_SPATIAL = 1 << 16       # 65,536 pixels per side
MAX_SCALE = 64
MAX_ELEMENTS = 1 << 31      # elements of one activation per sample
MAX_REPEAT = 10_000
MAX_BATCH = 1 << 16         # samples in one batch: bench, run, parity, engine profiles, Triton's max_batch
MAX_NODES = 100_000         # nodes after expanding blocks and repeats (ResNet-152: 570)
MAX_IO = 64                 # inputs, and outputs, of one network

# The YAML document itself (resgraph/spec/yamlsrc.py). Its size is counted on the parser's events
# before any tree is built, so a file of a million tiny values is refused in a fraction of a second.
MAX_SPEC_BYTES = 1 << 20    # 1 MiB of spec text is already absurd
MAX_SPEC_VALUES = MAX_NODES  # values as written: scalars, lists and mappings, keys included (ResNet-152's
#                             spec: ~300; 6,600 explicit convs: ~46,000). A layer written out takes 1 (relu)
#                             to ~10 values, so this admits about as many bare layers as MAX_NODES admits
#                             nodes, and 10,000+ convs with arguments; networks beyond use blocks and repeat
MAX_ALIAS_VALUES = 20_000   # values added by expanding aliases (alias bombs, "billion laughs")
MAX_SPEC_DEPTH = 64         # nesting of lists and mappings
MAX_LABELS = MAX_CHANNELS   # class names: one per output feature, at most
MAX_LABELS_BYTES = 1 << 20  # a labels file (ImageNet's 1,000 names: 10 KiB)

# A compiled folder is read as untrusted input: its manifest is bounded before it is parsed
MAX_MANIFEST_BYTES = 64 << 20   # labels (at most MAX_LABELS of them) are most of it
MAX_PARITY_BYTES = 1 << 30      # parity's random inputs in memory at once (its outputs stay small)
