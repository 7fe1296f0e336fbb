"""The SF-Mamba model family."""
