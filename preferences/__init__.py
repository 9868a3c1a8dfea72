"""The artist's preference marks: the append-only user-data store (``store``: records, marks, pairs, export).

Standard library only and no ComfyUI imports: the gallery's routes (``nodes/preference_routes.py``) write it, the
preference-reward trainer (``training/``) and any script read it.
"""
