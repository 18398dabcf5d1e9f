"""Everything that crosses machines goes through here, addressed by URI."""
