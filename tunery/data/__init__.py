"""Datasets: formats in, one `Example` shape inside, line-exact validation and Vertex statistics out.

`tunery.data.validate.validate` checks files; `tunery.data.formats` converts; `tunery.data.stats` summarises."""

from tunery.data.schema import Example, Issue, Turn

__all__ = ["Example", "Issue", "Turn"]
