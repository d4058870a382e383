"""Corpus-scale scoring on a Ray cluster (`edgeser predict --ray`, `edgeser check --ray`); needs the `ray` extra."""
