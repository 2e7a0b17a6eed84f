"""Data: the embedded world and its oracle, user-data readers, hygiene, token shards, batchers."""
