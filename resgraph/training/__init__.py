"""Training the emitted module: data (digits, ImageFolder), the loop, resumable trainer state.

Imports torch; nothing in `import resgraph` reaches here.
"""
