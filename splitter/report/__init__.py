"""What the commands show: report tables and JSON, and pictures of a split."""
