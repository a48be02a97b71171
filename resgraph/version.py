"""resgraph's version: the one place it is written. pyproject.toml reads it (dynamic version), so pip,
`resgraph --version`, `doctor` and every manifest say the same."""
__version__ = "0.2.0"
