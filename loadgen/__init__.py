"""loadgen: drive the stack with rising concurrency and write the service-envelope report."""
