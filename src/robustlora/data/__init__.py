"""The study's data: the download, the offline synthetic miniature, prepared splits and their validation."""
