"""Datasets: reading, synthetic generation, raw-source preparation and the leave-one-out split."""
