#!/usr/bin/env python3
"""Thin launcher: `python cli.py check specs/resnet18.yaml` works from a checkout without installing."""
from resgraph.cli import main

if __name__ == "__main__":
    main()
