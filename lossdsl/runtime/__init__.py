"""Torch pieces that know no program: the balancer module, the non-finite gates, schedule
evaluation, reading call inputs, the stored step and the precision of combinations."""
