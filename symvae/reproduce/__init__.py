"""The authors' tables reproduced: presets of rows (grid), each row's stages (train, sample,
score), the table and figure, runs on a cluster; and the speed tools (bench, the GPU check and
its offline assets)."""
