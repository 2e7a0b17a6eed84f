"""Training stages: one short file each (objective, data, defaults) over the shared loop in train.py."""
