"""IHE ATNA: the audit trail sent to a clinic's audit record repository.

The node's own trail (:mod:`dicom_service.audit`) is the durable record; when
``audit_repository`` is configured, :class:`~dicom_service.atna.forwarder.AuditForwarder`
turns its rows into DICOM audit messages (PS3.15 Annex A.5,
:mod:`~dicom_service.atna.messages`) and sends them over syslog (RFC 5424 on TLS, TCP or
UDP, :mod:`~dicom_service.atna.syslog`), as IHE ITI-20 "Record Audit Event" asks.
"""
