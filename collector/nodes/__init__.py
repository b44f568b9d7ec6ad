"""Who the nodes are: enrolment, keys over time and open streams.

``registry``: which node owns which public key (enrolment, in the ledger
file); ``keystore``: the rows behind key events; ``keyadmin``: operator
actions (revoke a node or authority key, hand a node over to a new key);
``keylog``: the running collector logs each key event and honours it at once;
``sessions``: the agent streams open now, with a bounded outbox each (what
directives are pushed down).
"""
