"""Gathering results into one tidy table and rendering the paper-style tables and figures."""
