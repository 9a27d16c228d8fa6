"""Layer 7, video: decoding files, the CLIP encoder, and extracting a collection from videos."""
