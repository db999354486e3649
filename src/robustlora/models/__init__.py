"""ResNet18 on [0,1] pixels, LoRA layers, and what each kind of adaptation trains."""
