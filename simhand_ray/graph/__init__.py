"""Similar-hands graph (SPEC §2): sharded faiss kNN over pose descriptors, then the pairs dataset."""
