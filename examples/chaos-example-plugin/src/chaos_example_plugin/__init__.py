"""An example chaos plugin: one fault and one probe, each a module (docs/plugins.md)."""
