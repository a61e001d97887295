"""Jinja templates for Hub model pages (package data of convirt_hf.model_cards)."""
