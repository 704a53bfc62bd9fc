"""atheris harnesses of the parsers that read untrusted bytes; see docs/security/fuzzing.md."""
