"""The run configuration: schema (typed defaults), validation (rules), loading (YAML,
overrides) and build (the runtime objects a run is made of)."""
