"""Phase 1, resolving a config: YAML file + command-line overrides -> a checked `ResolvedConfig`.

`resolver` (load, override, resolve), `schema` (the typed sections and each key's range),
`coerce` (YAML values to those types), `optim` (optimizer and scheduler classes checked against
torch's signatures and built once on a trial parameter), `reference` (docs/config.md). Nothing
here imports the training code: a job is checked on the submitting machine.
"""
