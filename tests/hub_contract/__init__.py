"""Local stand-ins for Hugging Face Hub REST APIs, for tests that cannot reach the Hub."""
