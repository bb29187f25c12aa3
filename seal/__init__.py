"""SEAL: self-adapting language models.

The namespace has three parts: `seal.teacher` (the self-edit policy and how it learns),
`seal.student` (the model that absorbs self-edits and is scored), and `seal.shared`
(domains, configs, graders, the run store).
"""

__version__ = "0.1.0"
