"""Making instruction data from the user's own reports and masks (the M3D-Data pipeline, SPEC §3).

The text work here is pure: prompts for a local LLM, robust parsing of what it wrote, the self-filtering rules and
the template-based segmentation instructions. The LLM itself and the resumable file writing live in
:mod:`m3d_components.engines.generate`, so every rule is testable on scripted LLM outputs. Modules: ``vqa``
(questions from reports), ``check`` (the second LLM pass), ``seg_instructions`` (REC/REG/SS/RES from masks),
``paraphrase`` (optional rewording of descriptions).
"""
