"""What the bridge, a server's worker and control agree on: keys, task payloads, error kinds,
job states, Celery settings and Redis scripts. Imported by both packages; imports neither."""
