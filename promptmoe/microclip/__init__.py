"""The micro CLIP: a 64-px CLIP pretrained by this project on synthetic region twins.

Taught in chapter 10. A random CLIP cannot show PromptMoE find a defect (its maps sit at chance on
categories it never saw); OpenAI's CLIP needs a download. This package pretrains, offline, a small
CLIP that does learn the state words ("flawless" vs "damaged") and transfers them to categories it
never saw, and ships its weights (``weights/``), which the ``micro`` preset loads.

* :mod:`.banks` - normal crops of the pretraining categories; the held-out pictures.
* :mod:`.defects` - six defect kinds painted on a whole batch in torch.
* :mod:`.captions` - twin captions that differ only in the state word.
* :mod:`.objective` - the windowed region forward, the text forward, the two losses.
* :mod:`.pretrain` - twin batches, schedule, checkpoints, the training loop.
* :mod:`.heldout` - images of held-out categories and their training-free zero-shot scores.
* :mod:`.export` - fp16 weights (unused token rows zeroed) and their manifest.
* :mod:`.command` - ``promptmoe pretrain-micro``.
"""
