"""The attacks, each as per-image rows: FGSM / PGD (ours), AutoAttack, black-box (ART), transfer."""
