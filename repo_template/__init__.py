"""Lab templates copied by ``autolab init`` (package data; each folder is one template)."""
