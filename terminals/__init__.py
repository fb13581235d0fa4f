"""Validators and POS: readers, tap sessions, fares, offline journal and uploader."""
