"""``runtime = "processes"``: real worker processes on one machine, sharing memory.

Server mode (APAM's master–worker design, Xu et al.): the main process runs the coordinator and
publishes the model into shared memory; worker processes compute gradients (:mod:`.runtime`).
Lock-free mode (Hogwild!, PASSM+, Gratton–Toint): the workers update a shared model and a shared
rule state themselves, by blocks of tensors (:mod:`.lockfree`, :mod:`.blocks`).
"""
