"""`make bench`: the stack on Redis under a closed-loop load, next to the floors of this machine."""
