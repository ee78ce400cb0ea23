"""The checker: explore every interleaving of a bounded model, prove the lifetime rules or print
the shortest trace that breaks one."""
