"""The attacks, each giving per-image rows: FGSM / PGD (gradient), AutoAttack, black-box through ART (blackbox, its
queries counted by queries), transfer; what they all take is checked in inputs, their rows are made in outcomes."""
