"""Acting: chat token ids, generation engines, one episode, and the env runner that plays groups."""
