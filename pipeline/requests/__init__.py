"""Requests: what was asked, by whom, and the one place its state changes.

``store`` keeps requests and moves them between the states ``states`` names, writing the
audit entry and the event in the same step; ``decisions`` is a refusal's shape;
``authorisation`` says from configuration who may ask, approve and operate (a group entry
asked of the membership the bot registers, never of a platform from here);
``timeline`` reads an update's phases back from its audit trail; ``steps`` links a
rollout's steps to it.

Imports only the leaves at the top of pipeline/.
"""
