"""DICOM audit messages (PS3.15 Annex A.5) made from the rows of the node's audit trail.

One trail row (:mod:`dicom_service.audit`) gives none, one or several messages:

=====================================  =============================================  ======
trail row                              message (EventID, event type)                  action
=====================================  =============================================  ======
node started / stopped                 110100 Application Activity, 110120 / 110121   E
association that stored instances      110104 DICOM Instances Transferred, one per    C
                                       study (the calling AE is the source)
association rejected, or a TLS         110113 Security Alert, 110126 Node             E
handshake refused on a certificate     Authentication
delivery of results                    110104 DICOM Instances Transferred (the node   R
                                       is the source, the destination the other)
API request naming a study/instance    110103 DICOM Instances Accessed                R, C,
                                                                                      U, D
``DELETE /studies/{uid}``              110105 DICOM Study Deleted                     D
``GET /studies``, ``GET /instances``   110112 Query                                   E
                                       and, for each study a list shows (its            R
                                       patient's name), 110103 Instances Accessed
``GET /audit``                         110101 Audit Log Used                          R
API request refused 401                110114 User Authentication, 110122 Login       E
API request refused 403                110113 Security Alert, 110132 Use of           E
                                       Restricted Function
=====================================  =============================================  ======

Other rows (an association that stored nothing: a C-ECHO; a request that failed or names
no study: ``GET /jobs``, ``/me``) give none; the trail still holds them. Outcomes: 0
(success), 4 (minor failure: an aborted association, instances refused, a delivery that
will be retried, a refused request).

Messages name studies by Study Instance UID (ID type 110180) and, when the node still
holds the study and ``patient_ids`` is on, the patient by Patient ID (RFC 3881 type 2).
Coded values use the DICOM schema's attributes (``csd-code``, ``codeSystemName``,
``originalText``).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: ``(code value, coding scheme, code meaning)``
Code = tuple[str, str, str]

APPLICATION_ACTIVITY: Code = ("110100", "DCM", "Application Activity")
AUDIT_LOG_USED: Code = ("110101", "DCM", "Audit Log Used")
INSTANCES_ACCESSED: Code = ("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED: Code = ("110105", "DCM", "DICOM Study Deleted")
QUERY: Code = ("110112", "DCM", "Query")
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION: Code = ("110114", "DCM", "User Authentication")

APPLICATION_START: Code = ("110120", "DCM", "Application Start")
APPLICATION_STOP: Code = ("110121", "DCM", "Application Stop")
LOGIN: Code = ("110122", "DCM", "Login")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
RESTRICTED_FUNCTION: Code = ("110132", "DCM", "Use of Restricted Function")

ROLE_APPLICATION: Code = ("110150", "DCM", "Application")
ROLE_LAUNCHER: Code = ("110151", "DCM", "Application Launcher")
ROLE_DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
ROLE_SOURCE: Code = ("110153", "DCM", "Source Role ID")

STUDY_UID_TYPE: Code = ("110180", "DCM", "Study Instance UID")
PATIENT_NUMBER_TYPE: Code = ("2", "RFC-3881", "Patient Number")
URI_TYPE: Code = ("12", "RFC-3881", "URI")
NODE_ID_TYPE: Code = ("110182", "DCM", "Node ID")

#: EventOutcomeIndicator values.
SUCCESS, MINOR_FAILURE = 0, 4
#: AuditSourceTypeCode 4: application server process.
APPLICATION_SERVER = "4"


@dataclass(frozen=True)
class AuditSource:
    """Who reports: this node.

    Attributes
    ----------
    source_id : str
        AuditSourceID (the AE title unless configured).
    ae_title : str
        The node's AE title.
    host : str
        The node's host name (its network access point in messages).
    site_id : str or None
        AuditEnterpriseSiteID.
    """

    source_id: str
    ae_title: str
    host: str
    site_id: str | None = None


@dataclass(frozen=True)
class Message:
    """One audit message.

    Attributes
    ----------
    xml : bytes
        The ``AuditMessage`` document, UTF-8 with its declaration, on one line.
    outcome : int
        Its EventOutcomeIndicator (0 success, 4 minor failure), for the syslog severity.
    """

    xml: bytes
    outcome: int


@dataclass(frozen=True)
class _Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative: str | None = None
    user_name: str | None = None
    access_point: str | None = None


class LookupUnavailable(Exception):
    """A lookup cannot answer now (the store closed or locked): the row's messages wait."""


#: Looks up the Patient ID of a study the node holds (None: unknown or removed); raises
#: :class:`LookupUnavailable` when it cannot tell now. One with a ``forget(study_uid)``
#: method is told when a study is stored again (its patient may have changed).
PatientLookup = Callable[[str], "str | None"]
#: Looks up a destination by name: ``(user id, host)`` (AE title or URL, and its host).
DestinationLookup = Callable[[str], "tuple[str, str] | None"]

_NON_PERSONS = ("service token ", "unauthenticated", "unknown", "auth disabled")


class MessageBuilder:
    """Turns trail rows into audit messages (module docstring).

    Parameters
    ----------
    source : AuditSource
    patient_of : callable, optional
        ``study_uid -> Patient ID or None``; without it no patient is named.
    destination : callable, optional
        ``destination name -> (user id, host) or None``.
    """

    def __init__(self, source: AuditSource, *, patient_of: PatientLookup | None = None,
                 destination: DestinationLookup | None = None) -> None:
        self.source = source
        self.patient_of = patient_of
        self.destination = destination

    # ------------------------------------------------------------------ dispatch
    def messages(self, row: Mapping[str, Any]) -> list[Message]:
        """The messages of one trail row (``read_events``' dict: ``kind``, ``actor``,
        ``action``, ``outcome``, ``client``, ``study_uid``, ``sop_instance_uid``,
        ``detail``, ``time``)."""
        kind = row.get("kind")
        if kind == "application":
            return self._application(row)
        if kind == "dicom-association":
            return self._association(row)
        if kind == "dicom-tls":
            return self._refused_certificate(row)
        if kind == "dicom-send":
            return self._send(row)
        if kind == "http":
            return self._http(row)
        return []

    # ------------------------------------------------------------------ kinds
    def _application(self, row: Mapping[str, Any]) -> list[Message]:
        event_type = {"start": APPLICATION_START, "stop": APPLICATION_STOP}.get(str(row.get("action")))
        if event_type is None:
            return []
        participants = [self._node(requestor=False, role=ROLE_APPLICATION),
                        _Participant(user_id=str(row.get("actor") or "unknown"), requestor=True, role=ROLE_LAUNCHER)]
        return [self._message(row, APPLICATION_ACTIVITY, "E", SUCCESS, participants, [], event_type=event_type)]

    def _association(self, row: Mapping[str, Any]) -> list[Message]:
        detail = row.get("detail") or {}
        calling = str(row.get("actor") or "")
        peer = _Participant(user_id=calling or "(no AE title)", requestor=True, role=ROLE_SOURCE,
                            alternative=f"AETITLES={calling}", access_point=_host(str(row.get("client") or "")))
        if row.get("outcome") == "rejected":
            alert = self._object(_host(str(row.get("client") or "")) or calling, NODE_ID_TYPE, type_code="2",
                                 role="13")
            return [self._message(row, SECURITY_ALERT, "E", MINOR_FAILURE,
                                  [self._node(requestor=False, role=ROLE_DESTINATION), peer], [alert],
                                  event_type=NODE_AUTHENTICATION,
                                  description=f"association from AE title {calling!r} rejected")]
        counts = detail.get("instances") or {}
        studies = [str(s) for s in detail.get("study_uids") or []]
        if not studies:
            return []
        forget = getattr(self.patient_of, "forget", None)
        if forget is not None and int(counts.get("new") or 0) > 0:
            for study in studies:  # stored again (after a removal, perhaps with another patient): check it
                forget(study)
        failed = row.get("outcome") != "released" or int(counts.get("refused") or 0) > 0
        description = None
        if failed:
            description = (f"association {row.get('outcome')}; instances stored {counts.get('new', 0)}, "
                           f"already held {counts.get('duplicate', 0)}, refused {counts.get('refused', 0)}")
        participants = [peer, self._node(requestor=False, role=ROLE_DESTINATION)]
        return [self._message(row, INSTANCES_TRANSFERRED, "C", MINOR_FAILURE if failed else SUCCESS, participants,
                              self._study_objects(study), description=description) for study in studies]

    def _refused_certificate(self, row: Mapping[str, Any]) -> list[Message]:
        detail = row.get("detail") or {}
        address = _host(str(row.get("client") or "")) or "(unknown)"
        peer = _Participant(user_id=address, requestor=True, role=ROLE_SOURCE, access_point=address)
        alert = self._object(address, NODE_ID_TYPE, type_code="2", role="13")
        why = str(detail.get("reason") or "")
        if detail.get("verify_message"):
            why += f" ({detail['verify_message']})"
        return [self._message(row, SECURITY_ALERT, "E", MINOR_FAILURE,
                              [self._node(requestor=False, role=ROLE_DESTINATION), peer], [alert],
                              event_type=NODE_AUTHENTICATION, description=f"TLS handshake refused: {why}")]

    def _send(self, row: Mapping[str, Any]) -> list[Message]:
        study = row.get("study_uid")
        if not study:
            return []
        detail = row.get("detail") or {}
        name = str(detail.get("destination") or "")
        found = self.destination(name) if self.destination is not None else None
        user_id, host = found if found is not None else (name or "(unknown destination)", None)
        failed = row.get("outcome") != "succeeded"
        participants = [self._node(requestor=True, role=ROLE_SOURCE),
                        _Participant(user_id=user_id, requestor=False, role=ROLE_DESTINATION,
                                     alternative=f"AETITLES={user_id}" if "/" not in user_id else None,
                                     access_point=host)]
        description = (f"delivery to {name!r} failed (attempt {detail.get('attempt')}); it is retried"
                       if failed else None)
        return [self._message(row, INSTANCES_TRANSFERRED, "R", MINOR_FAILURE if failed else SUCCESS, participants,
                              self._study_objects(str(study)), description=description)]

    def _http(self, row: Mapping[str, Any]) -> list[Message]:
        method, _, route = str(row.get("action") or "").partition(" ")
        outcome = str(row.get("outcome") or "")
        status = int(outcome) if outcome.isdecimal() else 500
        actor = str(row.get("actor") or "unknown")
        caller = _Participant(user_id=actor, requestor=True, role=ROLE_SOURCE,
                              user_name=None if actor.startswith(_NON_PERSONS) else actor,
                              access_point=str(row.get("client") or "") or None)
        node = self._node(requestor=False, role=ROLE_DESTINATION)
        path = str((row.get("detail") or {}).get("path") or route)
        if status == 401:
            return [self._message(row, USER_AUTHENTICATION, "E", MINOR_FAILURE, [caller, node], [],
                                  event_type=LOGIN, description=f"{method} {path}: bearer token missing or refused")]
        if status == 403:
            return [self._message(row, SECURITY_ALERT, "E", MINOR_FAILURE, [caller, node],
                                  [self._object(path, URI_TYPE, type_code="2", role="13")],
                                  event_type=RESTRICTED_FUNCTION,
                                  description=f"{method} {path} refused: the caller's role does not allow it")]
        if not 200 <= status < 300:
            return []
        study = row.get("study_uid")
        if route == "/audit" or route.startswith("/audit/"):
            log_object = self._object(path, URI_TYPE, type_code="2", role="13", name="Security Audit Log")
            return [self._message(row, AUDIT_LOG_USED, "R", SUCCESS, [caller, node], [log_object])]
        if method == "DELETE" and route == "/studies/{study_uid}" and study:
            return [self._message(row, STUDY_DELETED, "D", SUCCESS, [caller, node], self._study_objects(str(study)))]
        if study:
            action = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}.get(method, "R")
            objects = self._study_objects(str(study))
            return [self._message(row, INSTANCES_ACCESSED, action, SUCCESS, [caller, node], objects)]
        if method == "GET" and route in ("/studies", "/instances"):
            query = self._object(path, URI_TYPE, type_code="2", role="24", query=f"{method} {path}")
            # a list that shows patients (GET /instances: name, ID, birth date) accessed each study it shows
            shown = [str(s) for s in (row.get("detail") or {}).get("studies_shown") or []]
            return [self._message(row, QUERY, "E", SUCCESS, [caller, node], [query]),
                    *(self._message(row, INSTANCES_ACCESSED, "R", SUCCESS, [caller, node], self._study_objects(study))
                      for study in shown)]
        return []

    # ------------------------------------------------------------------ parts
    def _node(self, *, requestor: bool, role: Code) -> _Participant:
        return _Participant(user_id=self.source.ae_title, requestor=requestor, role=role,
                            alternative=f"AETITLES={self.source.ae_title}", access_point=self.source.host)

    def _study_objects(self, study_uid: str) -> list[ET.Element]:
        objects = [self._object(study_uid, STUDY_UID_TYPE, type_code="2", role="3")]
        patient = self.patient_of(study_uid) if self.patient_of is not None else None
        if patient:
            objects.append(self._object(patient, PATIENT_NUMBER_TYPE, type_code="1", role="1"))
        return objects

    @staticmethod
    def _object(object_id: str, id_type: Code, *, type_code: str, role: str, name: str | None = None,
                query: str | None = None) -> ET.Element:
        element = ET.Element("ParticipantObjectIdentification", {
            "ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role})
        _coded(element, "ParticipantObjectIDTypeCode", id_type)
        if name:
            ET.SubElement(element, "ParticipantObjectName").text = name
        elif query:  # the request, base64 as the schema wants a query (its parameters are not kept)
            ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(query.encode()).decode("ascii")
        return element

    def _message(self, row: Mapping[str, Any], event: Code, action: str, outcome: int,
                 participants: list[_Participant], objects: list[ET.Element], *, event_type: Code | None = None,
                 description: str | None = None) -> Message:
        root = ET.Element("AuditMessage")
        ident = ET.SubElement(root, "EventIdentification", {
            "EventActionCode": action, "EventDateTime": str(row.get("time")), "EventOutcomeIndicator": str(outcome)})
        _coded(ident, "EventID", event)
        if event_type is not None:
            _coded(ident, "EventTypeCode", event_type)
        if description:
            ET.SubElement(ident, "EventOutcomeDescription").text = description
        for participant in participants:
            attributes = {"UserID": participant.user_id}
            if participant.alternative:
                attributes["AlternativeUserID"] = participant.alternative
            if participant.user_name:
                attributes["UserName"] = participant.user_name
            attributes["UserIsRequestor"] = "true" if participant.requestor else "false"
            if participant.access_point:
                attributes["NetworkAccessPointID"] = participant.access_point
                attributes["NetworkAccessPointTypeCode"] = "2" if _is_address(participant.access_point) else "1"
            element = ET.SubElement(root, "ActiveParticipant", attributes)
            if participant.role is not None:
                _coded(element, "RoleIDCode", participant.role)
        source = {"AuditSourceID": self.source.source_id}
        if self.source.site_id:
            source["AuditEnterpriseSiteID"] = self.source.site_id
        ET.SubElement(ET.SubElement(root, "AuditSourceIdentification", source), "AuditSourceTypeCode",
                      {"csd-code": APPLICATION_SERVER})
        root.extend(objects)
        text = ET.tostring(root, encoding="unicode")
        if _NOT_XML.search(text) or "\n" in text or "\r" in text:  # rare: a request path, an AE title
            for element in root.iter():
                for key, value in element.attrib.items():
                    element.set(key, _xml_text(value))
                if element.text:
                    element.text = _xml_text(element.text).replace("\n", " ").replace("\r", " ").replace("\t", " ")
            text = ET.tostring(root, encoding="unicode")
        xml = b'<?xml version="1.0" encoding="UTF-8"?>' + text.encode("utf-8")
        return Message(xml=xml, outcome=outcome)


#: Characters XML 1.0 does not allow (the C0 controls but tab, newline and carriage return;
#: lone surrogates; U+FFFE and U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """``text`` with each character XML 1.0 cannot hold replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    value, scheme, meaning = code
    return ET.SubElement(parent, tag, {"csd-code": value, "codeSystemName": scheme, "originalText": meaning})


def _host(client: str) -> str:
    """The address of ``host:port`` (``[v6]:port`` and a bare address too)."""
    if client.startswith("["):
        return client[1:].partition("]")[0]
    if client.count(":") == 1:
        return client.partition(":")[0]
    return client


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
