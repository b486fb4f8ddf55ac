"""Carrying out a plan: the executor (every change in order, never re-deciding) and the apply lock it shares
between the keeper and the queen's reconcile loop."""
