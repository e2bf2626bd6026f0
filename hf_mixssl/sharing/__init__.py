"""Sharing: encoder export, Hub upload and model cards (templates ship as package data)."""
