"""Pure domain: messages, entities, prompts, replies, servers, jobs and routing. No I/O."""
