"""Images for vision-language models: loading (HTTP process), preprocessing, and the inputs
that travel with a request to the scheduler."""
