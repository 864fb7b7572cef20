"""raylane's Ray actors: request handler, queue consumer, executor and status keeper."""
