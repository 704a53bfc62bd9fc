"""HTTP front ends: decode to a protocol-neutral request, submit, encode the answer."""
