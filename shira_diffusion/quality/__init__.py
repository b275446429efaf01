"""How good a freshly trained style is, without labels: a per-style detector (does an image show the
style?), a content check (does the styled image keep what the base drew for the same prompt and
seed?), and the self-check that calibrates a new adapter's guidance and weight with both."""
