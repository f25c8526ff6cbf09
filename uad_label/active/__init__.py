"""Active learning for uad-label: cases (one image per case), scoring (detector image scores into the
datastore's image info), strategies (most_anomalous, most_uncertain, random with a correct top-k),
the label loop (re-scoring / fine-tuning after a final label) and a crash-safe local datastore."""
