"""Instance retrieval: the same object or place (copies, edits, crops) rather than the same
kind of scene. Pooled intermediate maps of the image tower (pooling.py), PCA-whitening
(whitening.py) and the extractor that runs them (features.py); the benchmark is
eval/instance.py (`imagetext eval instance`)."""
