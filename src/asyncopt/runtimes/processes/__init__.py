"""``runtime = "processes"``: real worker processes on one machine, sharing memory.

Server mode (APAM's master–worker design, Xu et al.): the main process runs the coordinator and
publishes the model into shared memory; worker processes compute gradients (:mod:`.runtime`).
With ``servers = K > 1`` the model is split into K blocks, each stepped by its own server
process (:mod:`.servers`).
Lock-free mode (Hogwild!, PASSM+, Gratton–Toint): the workers update a shared model and a shared
rule state themselves, by blocks of tensors (:mod:`.lockfree`, :mod:`.blocks`).
"""
