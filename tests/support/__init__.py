"""Helpers shared by the tests of every room: the independent signer, request helpers, model builders."""
