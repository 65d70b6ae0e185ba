"""The run configuration: schema (typed defaults), validation (rules), loading (YAML, overrides), build (runtime objects)."""
